"""Keeping the catalogue in step with the upstreams' model lists and the operator's file."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from satsrouter.market.catalogue import Catalogue, CatalogueError, Model, merge_candidates
from satsrouter.market.overrides import ModelOverrides, load_overrides
from satsrouter.upstream.providers import ProviderConfig, normalise_model_list

log = logging.getLogger(__name__)

ModelListFetcher = Callable[[], Awaitable[Any]]


@dataclass
class SyncStatus:
    """What the last refresh did, for `/v1/info` and the logs."""

    last_attempt: float | None = None
    last_success: float | None = None
    errors: dict[str, str] = field(default_factory=dict)  # source -> last error
    models: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "last_attempt": self.last_attempt,
            "last_success": self.last_success,
            "errors": dict(self.errors),
            "models": self.models,
            "stale": bool(self.errors),
        }


class CatalogueSync:
    """Fetches each upstream's `/models`, applies `MODELS_PATH`, swaps the catalogue in.

    A failing source keeps its last good model list, so a sync failure never empties the
    catalogue; the failure is logged and reported in `status`.
    """

    def __init__(
        self,
        catalogue: Catalogue,
        sources: dict[str, ModelListFetcher],
        models_path: Path | None,
        configs: dict[str, ProviderConfig] | None = None,
    ) -> None:
        self.catalogue = catalogue
        self.sources = sources  # provider name -> fetcher, in catalogue order
        self.configs = configs or {}  # how each provider's ids become public ones
        self.models_path = models_path
        self.status = SyncStatus()
        self._last_good: dict[str, list[dict[str, Any]]] = {}
        self._overrides = ModelOverrides()

    async def refresh(self) -> bool:
        """One sync pass; True when the catalogue holds at least one model afterwards."""
        self.status.last_attempt = time.time()
        names = list(self.sources)
        results = await asyncio.gather(
            *(self.sources[name]() for name in names), return_exceptions=True
        )
        for name, result in zip(names, results, strict=True):
            entries = None if isinstance(result, BaseException) else self._entries(name, result)
            if isinstance(result, BaseException) or entries is None:
                reason = str(result) if isinstance(result, BaseException) else "not a model list"
                self.status.errors[name] = reason or type(result).__name__
                log.warning(
                    "model list of %s unavailable (%s); keeping the last good one",
                    name,
                    self.status.errors[name],
                )
                continue
            self._last_good[name] = entries
            self.status.errors.pop(name, None)
        if self.models_path is not None:
            try:
                self._overrides = load_overrides(self.models_path)
                self.status.errors.pop("models_path", None)
            except (OSError, CatalogueError) as exc:
                self.status.errors["models_path"] = str(exc)
                log.error("MODELS_PATH unreadable (%s); keeping the previous overrides", exc)
        models = self._build()
        if not models:
            return len(self.catalogue) > 0
        self.catalogue.replace(models, self._overrides.aliases)
        self.status.models = len(models)
        if not self.status.errors:
            self.status.last_success = time.time()
        return True

    def _entries(self, provider: str, payload: Any) -> list[dict[str, Any]] | None:
        """A provider's model list under public ids (its defaults filled in); None if the
        answer is not a model list."""
        config = self.configs.get(provider)
        if config is not None:
            try:
                return normalise_model_list(config, payload)
            except ValueError:
                return None
        entries = payload.get("data") if isinstance(payload, dict) else payload
        if not isinstance(entries, list):
            return None
        return [e for e in entries if isinstance(e, dict) and "id" in e]

    def _build(self) -> list[Model]:
        routes: dict[str, list[Model]] = {}
        default_provider = next(iter(self.sources), "")
        for provider in self.sources:
            config = self.configs.get(provider)
            listed = self._last_good.get(provider, [])
            entries = self._overrides.apply(listed)
            for entry in entries:
                if any(m.provider == provider for m in routes.get(entry["id"], ())):
                    continue  # listed twice by one provider: its first entry stands
                from_file = entry["id"] in self._overrides.entries
                if from_file and provider != default_provider:
                    upstream_ids = {e["id"] for e in listed}
                    if entry["id"] not in upstream_ids:
                        continue  # file-only models belong to the first upstream
                try:
                    model = Model.from_openrouter(entry, provider)
                except CatalogueError as exc:
                    log.warning("skipping model from %s: %s", provider, exc)
                    continue
                if config is not None and config.fee is not None and model.fee is None:
                    model = replace(model, fee=config.fee)
                routes.setdefault(entry["id"], []).append(model)
        return [merge_candidates(models) for models in routes.values()]

    async def run(self, interval: float | Callable[[], float]) -> None:
        """Refresh forever, every `interval` seconds (sooner while nothing is loaded).

        `interval`: seconds, or a function read every round (the admin may change it).
        """
        while True:
            seconds = interval() if callable(interval) else interval
            await asyncio.sleep(seconds if len(self.catalogue) else min(seconds, 30.0))
            try:
                await self.refresh()
            except Exception:
                log.exception("catalogue refresh failed")
