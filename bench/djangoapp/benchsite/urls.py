from benchapp import views
from django.urls import path

urlpatterns = [path("item/<int:pk>/", views.item)]
