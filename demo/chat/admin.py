from django.contrib import admin

from .models import Message


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ("room", "text", "author", "created")
    list_filter = ("room",)
