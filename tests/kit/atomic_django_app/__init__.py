"""The Django app of the atomic tests' Django children (``INSTALLED_APPS``): a package, because
Django finds an app's models in its ``models`` submodule."""
