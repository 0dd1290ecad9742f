from django.urls import include, path

from blog import views

urlpatterns = [
    path("", views.index, name="index"),
    path("posts/", views.create_post, name="create_post"),
    path("login/", views.login_view, name="login"),
    path("logout/", views.logout_view, name="logout"),
    path("", include("wsgi_channels.adapters.django.urls")),  # the browser client
]
