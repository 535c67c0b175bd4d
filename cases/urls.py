from django.urls import path

from . import views

app_name = "cases"

urlpatterns = [
    path("slides/<int:slide_id>.dzi", views.slide_dzi, name="dzi"),
    path(
        "slides/<int:slide_id>_files/<int:level>/<int:col>_<int:row>.jpeg",
        views.slide_tile,
        name="tile",
    ),
    path("slides/<int:slide_id>/tile-grant", views.slide_tile_grant, name="tile_grant"),
    path("slides/<int:slide_id>/thumbnail.jpeg", views.slide_thumbnail, name="thumbnail"),
    path(
        "slides/<int:slide_id>/associated/<slug:name>.jpeg",
        views.slide_associated_image,
        name="associated_image",
    ),
]
