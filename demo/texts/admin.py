from django.contrib import admin

from .models import Text


@admin.register(Text)
class TextAdmin(admin.ModelAdmin):
    list_display = ("number", "direction", "body", "author", "created")
    list_filter = ("direction",)
    search_fields = ("number", "body")
