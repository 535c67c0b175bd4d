"""The two roles, as groups, and the model permissions lab admins get in the admin."""

PATHOLOGIST = "pathologist"
LAB_ADMIN = "lab_admin"


def grant_lab_admin(apps, app_label: str, actions=("add", "change", "view")) -> None:
    """For data migrations: make both groups and give lab_admin the app's model permissions."""
    from django.contrib.auth.management import create_permissions

    app_config = apps.get_app_config(app_label)
    app_config.models_module = True  # create_permissions skips apps it thinks have no models
    create_permissions(app_config, verbosity=0, apps=apps)
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    Group.objects.get_or_create(name=PATHOLOGIST)
    lab_admin, _ = Group.objects.get_or_create(name=LAB_ADMIN)
    codenames = [
        f"{action}_{model._meta.model_name}"
        for model in app_config.get_models()
        for action in actions
    ]
    lab_admin.permissions.add(
        *Permission.objects.filter(content_type__app_label=app_label, codename__in=codenames)
    )
