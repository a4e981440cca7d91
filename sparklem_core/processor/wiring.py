"""How a configured processor is put together: plugins, store, pipeline, consumer.

The one place that knows which pieces a processor is built from and in which order; the
command line, the demo, the plugin authors' kit, the tests and the benchmarks all build
through it, so a new piece is added here once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from Crypto.PublicKey import RSA

from sparklem_core.db.store import Store, open_store
from sparklem_core.fleet.registry import AgentRegistry, load_server_keys
from sparklem_core.plugin_host import PluginHost
from sparklem_core.processor.consumer import Processor
from sparklem_core.processor.pipeline import Pipeline
from sparklem_core.processor.retention import Target, targets
from sparklem_core.settings.config import Config

log = logging.getLogger(__name__)


@dataclass
class Wiring:
    """A configuration's plugins loaded and every table declared on its store."""

    config: Config
    plugins: PluginHost
    store: Store
    retention: list[Target]  # the bounded tables

    def plugins_running(self) -> bool:
        """Warn of each plugin that is not running; False, said, when none is."""
        for info in self.plugins.infos:
            if not info.ok and info.status != "disabled":
                log.warning("plugin %s not running: %s", info.name, info.status)
        if not self.plugins.loaded():
            log.error(
                "no plugin could be loaded from installed packages or the plugins directory "
                "(%s); see: sparklem plugins",
                self.config.plugins_dir or "none",
            )
            return False
        return True

    def registry(self) -> AgentRegistry:
        """The enrolled agents of ``certificates``, refreshed as the config says."""
        return registry_of(self.config)

    def pipeline(
        self,
        server_keys: Mapping[str, RSA.RsaKey] | None = None,
        registry: AgentRegistry | None = None,
    ) -> Pipeline:
        """The per-record path (``run``, ``redrive``); keys and registry from the config's
        certificates unless given."""
        return build_pipeline(
            self.config,
            self.plugins,
            self.store,
            load_server_keys(self.config.certificates) if server_keys is None else server_keys,
            registry,
        )

    def processor(self, pipeline: Pipeline) -> Processor:
        """The Kafka consumer around ``pipeline``, pruning this configuration's tables."""
        topics = sorted(set(pipeline.topics.values()))
        return Processor(self.config, pipeline, self.store, topics, prune=self.retention)


def prepare(config: Config) -> Wiring:
    """Load plugins, check their settings, declare every table (core and plugins) on a Store."""
    plugins, store = open_store(config)
    return Wiring(config, plugins, store, targets(store, config.retention))


def plugin_topics(config: Config, plugins: PluginHost) -> dict[str, str]:
    """Each loaded plugin's topic: ``plugins.NAME.topic`` when set, else its manifest's."""
    return {
        name: config.plugin_topic(name, info.manifest.topic)
        for name, info in plugins.loaded().items()
        if info.manifest is not None
    }


def build_pipeline(
    config: Config,
    plugins: PluginHost,
    store: Store,
    server_keys: Mapping[str, RSA.RsaKey],
    registry: AgentRegistry | None = None,
) -> Pipeline:
    """A :class:`Pipeline` as the processor runs one: ``config``'s processor settings, plugin
    settings and topics; the agents of ``config.certificates`` unless ``registry`` is given."""
    return Pipeline(
        config.processor,
        server_keys,
        registry_of(config) if registry is None else registry,
        plugins,
        config.plugins,
        store,
        topics=plugin_topics(config, plugins),
    )


def registry_of(config: Config) -> AgentRegistry:
    """The agents enrolled in ``config.certificates``, refreshed as the config says."""
    return AgentRegistry(config.certificates, config.processor.registry_refresh_s)
