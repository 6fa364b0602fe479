"""Print the default roles' permission matrix as Markdown (the README's table comes from here)."""

from django.core.management.base import BaseCommand

from accounts.permissions import roles_matrix_markdown


class Command(BaseCommand):
    help = __doc__

    def handle(self, *args, **options) -> None:
        self.stdout.write(roles_matrix_markdown())
