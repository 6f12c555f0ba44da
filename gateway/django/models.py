from __future__ import annotations

from django.db import models


class MqttAccess(models.Model):
    """No table: the holder of the MQTT permissions ``gateway.django.auth.mqtt_acl`` checks, so
    they can be granted to users and groups in the admin like any other permission."""

    class Meta:
        managed = False
        default_permissions = ()
        permissions = [("mqtt_publish", "Can publish MQTT messages"), ("mqtt_subscribe", "Can subscribe to MQTT topics")]
