from django.contrib import admin
from django.urls import path

from chat import views

urlpatterns = [
    path("", views.index, name="index"),
    path("chat/<str:room_name>/", views.room, name="room"),
    path("readings/", views.readings, name="readings"),
    path("tickets/", views.tickets, name="tickets"),
    path("admin/", admin.site.urls),
]
