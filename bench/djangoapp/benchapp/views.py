"""The measured view: an ordinary sync view, one ORM read and a template, as most projects write it."""

from django.shortcuts import get_object_or_404, render

from .models import Item


def item(request, pk):
    return render(request, "benchapp/item.html", {"item": get_object_or_404(Item, pk=pk)})
