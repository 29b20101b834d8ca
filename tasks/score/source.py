"""Which model scores the graph (``score.model``): the registered champion (default), a
registered version of the graph's model, or a checkpoint on this machine; resolved to a local
weights file before the scoring stage runs (:func:`tasks.score.score.score_nodes`)."""

from __future__ import annotations

from pathlib import Path

from tasks.config import PipelineConfig
from tasks.errors import InputError


def _version_weights(config: PipelineConfig, version: str) -> tuple[str, str]:
    """``(weights file, run id)`` of registered ``version`` of the graph's model, downloaded into
    the store beside the champion's warm-start copies (once per run)."""
    from mlflow.exceptions import MlflowException

    from tasks.track.tracking import _client, download_weights, model_name, tracking_uri

    client = _client(tracking_uri(config))
    name = model_name(config)
    try:
        mv = client.get_model_version(name, version)
    except MlflowException as e:
        raise InputError(f"score.model={version}: registered model {name!r} has no version {version} "
                         f"({str(e).splitlines()[0]})") from None
    run_id = str(mv.run_id or "")
    try:
        return download_weights(config, run_id, client), run_id
    except (MlflowException, OSError) as e:
        raise InputError(f"version {version} of {name!r} (run {run_id}) has no weights to score with: {e}") from None


def model_weights(config: PipelineConfig) -> tuple[str, str]:
    """``(local weights, label)`` for ``config.score.model``.

    Args:
        config: the resolved config (its ``score.model``, ``track`` section, ``store`` and graph name).

    ``None`` (default): the champion of the graph's registered model; digits: that registered
    version; anything else: a checkpoint file or checkpoint set directory. A model that cannot be
    found is an :class:`~tasks.errors.InputError` naming what was asked for.
    """
    from tasks.track.tracking import champion_weights, model_name

    spec = config.score.model
    if spec is None:
        found = champion_weights(config)
        if found is None:
            raise InputError(f"registered model {model_name(config)!r} has no champion to score with: run `graphpipe run` "
                             "first, or set score.model to a version or a checkpoint")
        return found[0], f"champion of {model_name(config)} (run {found[1]})"
    if spec.isdigit():
        path, run_id = _version_weights(config, spec)
        return path, f"{model_name(config)} v{spec} (run {run_id})"
    if not Path(spec).exists():
        raise InputError(f"score.model={spec}: no such checkpoint file or directory; expected a registered version "
                         "number or a checkpoint")
    return spec, f"checkpoint {spec}"
