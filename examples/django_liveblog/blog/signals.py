"""A saved post is pushed to every open page, after the transaction commits (never on rollback)."""
import json

from django.db.models.signals import post_save
from django.dispatch import receiver

from wsgi_channels.adapters.django import group_send

from .models import Post

GROUP = "djlive"


@receiver(post_save, sender=Post)
def push_post(sender, instance: Post, created: bool, **kwargs) -> None:
    group_send(GROUP, {"text": json.dumps(instance.as_dict())}, on_commit=True)
