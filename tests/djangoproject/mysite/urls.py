from chat import views
from django.contrib import admin
from django.urls import path

urlpatterns = [
    path("", views.index, name="index"),
    path("chat/<str:room_name>/", views.room, name="room"),
    path("notify/<str:room_name>/", views.notify, name="notify"),
    path("device/<str:device>/", views.command_device, name="device"),
    path("whoami/", views.whoami, name="whoami"),
    path("mail/", views.mail_team, name="mail"),
    path("admin/", admin.site.urls),
]
