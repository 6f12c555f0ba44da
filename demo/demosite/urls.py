from dashboard import views as dashboard
from django.contrib import admin
from django.templatetags.static import static
from django.urls import path
from django.views.generic import RedirectView
from sensors import views as sensors
from texts import views as texts
from tickets import mailbox
from tickets import views as tickets

urlpatterns = [
    path("", dashboard.index, name="dashboard"),
    path("readings/", sensors.readings, name="readings"),
    path("tickets/<int:pk>/reply/", tickets.reply, name="ticket-reply"),
    path("texts/reply/", texts.reply, name="text-reply"),
    path("mailbox/send/", mailbox.send, name="mailbox-send"),
    path("admin/", admin.site.urls),
    path("favicon.ico", RedirectView.as_view(url=static("dashboard/icon.svg"))),
]
admin.site.site_header = "asgi-gateway showcase"
admin.site.site_title = "showcase admin"
admin.site.site_url = "/"
