"""The gate and fuzz suites: pytest modules that ``qkcheck gate`` and ``qkcheck fuzz`` run (and that
a user's own pytest suite may import, with the plugin ``qkcheck.cases.plugin`` loaded). Their cases
are parametrized by the plugin (``pytest_generate_tests``), from ``--qkcheck-kernels`` or a
``qkcheck(kernels=...)`` marker. ``pytest.ini`` beside them keeps a user's own ini files and
conftests out of the CLI's runs."""
