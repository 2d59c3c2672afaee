"""The MLflow UI's first view of a study: a shared view state stored on the experiment.

MLflow's experiment page (3.x) restores a *shared view* named in its URL
(``#/experiments/ID/runs?viewStateShareKey=KEY``) from the experiment tag
``mlflow.sharedViewState.KEY``: a JSON object (plain, or ``"deflate;"`` plus
base64 of zlib-compressed JSON) from which it takes its search facets
(``searchFilter``, ``orderByKey``, ``orderByAsc``, ...) and UI state
(``selectedColumns``, ``columnOrder``, ``groupBy``, ...). It ignores
``runsExpanded`` and ``runsPinned`` there, so a parent run cannot be opened by
a shared view; but the runs table nests child runs under their parent only
while it is sorted by creation time with no search filter, so a view sorted by a
score shows every run as its own row. The view disentbench writes is that:
all runs flat, sorted by the study's first headline score (best first; runs
without it, such as the parent, last), with the swept hyperparameters and the
headline scores as columns, so the runs and their scores are on screen without
a click. ``disentbench ui`` prints the URL with the key.
"""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Iterable, Sequence

VIEW_KEY = "disentbench-study"  # the share key: a fixed one, so a bookmark of the URL stays valid
TAG_PREFIX = "mlflow.sharedViewState."
VIEW_TAG = TAG_PREFIX + VIEW_KEY
MAX_TAG_VALUE = 20_000  # MLflow's limit on an experiment tag's value
RUN_NAME_SORT = "tags.`mlflow.runName`"  # any sort but creation time lists child runs flat
MARKER = "disentbench"  # a key of the state disentbench writes (the UI ignores keys it does not know)


def column(kind: str, key: str) -> str:
    """A runs-table column id as the UI names it: ``metrics.`eval/mean/mig/discrete_mig```."""
    return f"{kind}.`{key}`"


def view_state(headline_keys: Sequence[str], param_keys: Sequence[str] = ()) -> dict:
    """The shared view: flat runs sorted by the first headline score, hyperparameters and headline scores shown."""
    columns = [column("params", k) for k in param_keys] + [column("metrics", k) for k in headline_keys]
    return {
        MARKER: 1,
        "orderByKey": column("metrics", headline_keys[0]) if headline_keys else RUN_NAME_SORT,
        "orderByAsc": not headline_keys,
        "selectedColumns": list(dict.fromkeys(columns)),
    }


def encode(state: dict) -> str:
    """The tag value: plain JSON when it fits MLflow's limit, else MLflow's ``deflate;`` form."""
    text = json.dumps(state, separators=(",", ":"))
    if len(text) <= MAX_TAG_VALUE:
        return text
    return "deflate;" + base64.b64encode(zlib.compress(text.encode())).decode()


def decode(value: str) -> dict | None:
    """A tag value back to the state (None if it is not one)."""
    try:
        if value.startswith("deflate;"):
            value = zlib.decompress(base64.b64decode(value[len("deflate;") :])).decode()
        state = json.loads(value)
    except (ValueError, zlib.error):
        return None
    return state if isinstance(state, dict) else None


def merged(existing: dict | None, new: dict) -> dict:
    """``new`` keeping the columns of a view another config of the same experiment wrote (theirs first)."""
    if not existing or MARKER not in existing:
        return new
    columns = [c for c in existing.get("selectedColumns", []) if isinstance(c, str)]
    return {**new, "selectedColumns": list(dict.fromkeys(columns + new["selectedColumns"]))}


def fit(state: dict) -> str:
    """:func:`encode`, dropping columns from the end while the value exceeds MLflow's limit."""
    value = encode(state)
    while len(value) > MAX_TAG_VALUE and state["selectedColumns"]:
        state = {**state, "selectedColumns": state["selectedColumns"][:-1]}
        value = encode(state)
    return value


def write_view(client, experiment_id: str, headline_keys: Sequence[str], param_keys: Iterable[str] = ()) -> bool:
    """Write (or widen) the study's shared view on the experiment; True if the tag changed.

    ``client`` is an ``MlflowClient`` (or the tracker's retrying one).
    """
    experiment = client.get_experiment(experiment_id)
    current = experiment.tags.get(VIEW_TAG)
    state = merged(decode(current) if current else None, view_state(list(headline_keys), list(param_keys)))
    value = fit(state)
    if value == current:
        return False
    client.set_experiment_tag(experiment_id, VIEW_TAG, value)
    return True


def has_view(experiment) -> bool:
    """Whether an MLflow ``Experiment`` carries disentbench's shared view."""
    return VIEW_TAG in (experiment.tags or {})


def query() -> str:
    """The URL query parameter that opens the view (inside the UI's ``#/...`` route)."""
    return f"viewStateShareKey={VIEW_KEY}"
