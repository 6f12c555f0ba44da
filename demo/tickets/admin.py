from django.contrib import admin

from .models import Reply, Ticket


class ReplyInline(admin.TabularInline):
    model = Reply
    extra = 0
    readonly_fields = ("author", "created")


@admin.register(Ticket)
class TicketAdmin(admin.ModelAdmin):
    list_display = ("pk", "sender", "subject", "created")
    search_fields = ("sender", "subject", "body")
    inlines = [ReplyInline]
