from django.db import models


class Ticket(models.Model):
    sender = models.EmailField()
    subject = models.CharField(max_length=200)
    body = models.TextField()
    user = models.CharField(max_length=150, blank=True)
    created = models.DateTimeField(auto_now_add=True)
