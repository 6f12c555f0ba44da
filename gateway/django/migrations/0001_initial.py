from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies: list = []

    operations = [
        migrations.CreateModel(
            name="MqttAccess",
            fields=[("id", models.AutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID"))],
            options={
                "managed": False,
                "default_permissions": (),
                "permissions": [("mqtt_publish", "Can publish MQTT messages"), ("mqtt_subscribe", "Can subscribe to MQTT topics")],
            },
        ),
    ]
