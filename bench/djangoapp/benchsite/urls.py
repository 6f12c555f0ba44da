from django.urls import path

from benchapp import views

urlpatterns = [path("item/<int:pk>/", views.item)]
