from django.contrib import admin

from .models import Ticket


@admin.register(Ticket)
class TicketAdmin(admin.ModelAdmin):
    list_display = ("pk", "sender", "subject", "created")
    search_fields = ("sender", "subject", "body")
