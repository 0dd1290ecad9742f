import html
import json
import os

from django.contrib.auth import authenticate, login, logout
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import HttpResponse, HttpResponseBadRequest, JsonResponse
from django.middleware.csrf import get_token
from django.shortcuts import redirect
from django.views.decorators.http import require_POST

from .models import Post

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Django live blog</title></head>
<body><h1>Django live blog</h1>
<p>Logged in as {user}. <a href="/logout/">log out</a></p>
<p id="status" data-state="connecting">connecting…</p>
<form method="post" action="/posts/"><input type="hidden" name="csrfmiddlewaretoken" value="{csrf}">
<input name="title" placeholder="Title" required> <input name="body" placeholder="Text"> <button>Publish</button></form>
<section id="posts">{posts}</section>
<script type="module">
import {{ connect }} from "/_wsgi_channels/static/channels.js";
const status = document.getElementById("status");
const socket = connect({ws_url});
socket.on("open", () => {{ status.dataset.state = "open"; status.textContent = "live"; }});
socket.on("json", (post) => {{
  if (post.hello || document.getElementById(`post-${{post.id}}`)) return;
  const a = document.createElement("article");
  a.id = `post-${{post.id}}`;
  const h = document.createElement("h2");
  h.textContent = post.title;
  a.append(h);
  document.getElementById("posts").prepend(a);
}});
</script></body></html>
"""

LOGIN = """<!doctype html><html><body><h1>Log in</h1>
<form method="post"><input type="hidden" name="csrfmiddlewaretoken" value="{csrf}">
<input name="username" placeholder="user"> <input name="password" type="password" placeholder="password">
<button>Log in</button></form><p>{error}</p></body></html>"""


@login_required
def index(request):
    posts = "".join(f'<article id="post-{p.id}"><h2>{html.escape(p.title)}</h2></article>'
                    for p in Post.objects.all()[:50])
    # DJLIVE_WS_URL: where the page opens its socket; default the same origin (nginx sends /ws/ to the sidecar).
    ws_url = json.dumps(os.environ.get("DJLIVE_WS_URL") or "/ws/posts/").replace("<", "\\u003c")
    return HttpResponse(PAGE.format(user=html.escape(request.user.get_username()), csrf=get_token(request),
                                    ws_url=ws_url,
                                    posts=posts))


@login_required
@require_POST
def create_post(request):
    if request.content_type == "application/json":
        data = json.loads(request.body or b"{}")
    else:
        data = request.POST
    title = (data.get("title") or "").strip()
    if not title:
        return HttpResponseBadRequest("a post needs a title")
    with transaction.atomic():
        post = Post.objects.create(title=title, body=(data.get("body") or "").strip())
        # post_save queued the push; it goes out when this block commits.
    if request.content_type == "application/json":
        return JsonResponse(post.as_dict(), status=201)
    return redirect("index")


def login_view(request):
    error = ""
    if request.method == "POST":
        user = authenticate(request, username=request.POST.get("username"), password=request.POST.get("password"))
        if user is not None:
            login(request, user)
            return redirect(request.GET.get("next") or "index")
        error = "wrong user name or password"
    return HttpResponse(LOGIN.format(csrf=get_token(request), error=html.escape(error)))


def logout_view(request):
    logout(request)
    return redirect("login")
