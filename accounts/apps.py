from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Accounts and access"

    def ready(self) -> None:
        from accounts import signals  # noqa: F401  (connects the audit receivers)
        from accounts.api import schema  # noqa: F401  (registers the OpenAPI auth extension)
