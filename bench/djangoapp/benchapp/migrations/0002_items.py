"""The rows the view reads: a migrated database is a ready one."""

from decimal import Decimal

from django.db import migrations

WORDS = ["sturdy", "oak", "table", "with", "two", "drawers", "brass", "handles", "and", "a", "waxed", "finish"]


def add_items(apps, schema_editor):
    Item = apps.get_model("benchapp", "Item")
    Item.objects.bulk_create(
        Item(name=f"Item {i}", description=" ".join(WORDS[i % 3:] + WORDS[:i % 3]), price=Decimal(i * 7) / 4)
        for i in range(1, 101)
    )


class Migration(migrations.Migration):
    dependencies = [("benchapp", "0001_initial")]
    operations = [migrations.RunPython(add_items, migrations.RunPython.noop)]
