"""First-party plugins: each module is an ordinary pluggy plugin, registered by name exactly like
a third-party package's entry point (so ``CHATAPP_DISABLED_PLUGINS`` can turn any of them off)."""

DEFAULT_PLUGINS = (
    "plugins.echo",
    "plugins.runpod",
    "plugins.openai_compat",
    "plugins.personas",
    "plugins.persona_dir",
    "plugins.pricing",
    "plugins.cache",
    "plugins.usage",
    "plugins.budgets",
    "plugins.reconcile",
)
