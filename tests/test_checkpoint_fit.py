"""The DDSP-SVC fit check lives above the queue and is handed to it (issue 22: no arrow back up).

The queue and the reader load state_dicts whatever the model; training passes
:func:`mlflow_ddsp.training.checkpoint_fit.check_fit` to ``queue.restore`` (resume,
``--init-from``) and to ``load_into`` (other DDP ranks), which refuse another
architecture, or weights that are not their own config.yaml's, with every key named.
"""

from __future__ import annotations

import re

import pytest
import torch
import yaml

from mlflow_ddsp import CheckpointQueue
from mlflow_ddsp.checkpoint import CheckpointReader
from mlflow_ddsp.checkpoint.reader import load_into
from mlflow_ddsp.config import parse_config
from mlflow_ddsp.errors import ArchitectureMismatchError, StateDictMismatchError
from mlflow_ddsp.models import build_model_from_config
from mlflow_ddsp.training.checkpoint_fit import check_fit

from test_architecture import BASE, CHANGES, changed, register


def test_resume_refuses_a_checkpoint_of_another_architecture_through_the_fit_check(embedded, model_name):
    delta, trained, mine = CHANGES["two_keys"]
    register(embedded, model_name, BASE)
    other = build_model_from_config(parse_config(changed(BASE, delta)))
    with CheckpointQueue(model_name, 10, None, tracking_uri=embedded.uri, experiment=embedded.experiment) as queue:
        with pytest.raises(ArchitectureMismatchError, match=rf"^checkpoint {model_name} v1 \(step 10\) was trained "
                           rf"with {re.escape(trained)}; this config has {re.escape(mine)}: set these keys as the "
                           "checkpoint has them"):  # fmt: skip
            queue.restore(other, check=check_fit)
        # without it the queue knows no architectures: the state_dict comparison still refuses, keys named
        with pytest.raises(StateDictMismatchError, match=rf"^checkpoint {model_name} v1 \(step 10\) does not fit"):
            queue.restore(other)
        fits = build_model_from_config(parse_config(BASE))
        assert queue.restore(fits, check=check_fit) == 10


def test_another_rank_refuses_weights_that_are_not_their_config_yamls(embedded, model_name):
    delta, trained, mine = CHANGES["n_spk"]
    register(embedded, model_name, changed(BASE, delta), weights_of=BASE)  # config says n_spk=1, weights have 2
    restored = CheckpointReader(model_name, tracking_uri=embedded.uri).fetch()
    model = build_model_from_config(parse_config(changed(BASE, delta)))
    with pytest.raises(ArchitectureMismatchError, match=rf"^checkpoint {model_name} v1 \(step 10\) holds weights "
                       rf"of {re.escape(trained)}; its config.yaml has {re.escape(mine)}: "):  # fmt: skip
        load_into(restored, model, check=check_fit)


def test_a_checkpoint_without_a_config_is_compared_by_its_weights(embedded, model_name):
    model = build_model_from_config(parse_config(BASE))
    with CheckpointQueue(model_name, 10, None, tracking_uri=embedded.uri, experiment=embedded.experiment) as queue:
        queue.save(10, model).result()  # no config given: an empty config.yaml mapping
    restored = CheckpointReader(model_name, tracking_uri=embedded.uri).fetch()
    assert yaml.safe_load(restored.config_yaml) in (None, {})
    other = build_model_from_config(parse_config(changed(BASE, CHANGES["n_spk"][0])))
    with pytest.raises(ArchitectureMismatchError, match=r"holds weights of model.n_spk=2; this config has "
                       r"model.n_spk=1: set these keys as the weights have them"):  # fmt: skip
        load_into(restored, other, check=check_fit)


def test_the_fit_check_passes_any_other_model_with_no_hint(embedded, model_name):
    register(embedded, model_name, BASE)
    restored = CheckpointReader(model_name, tracking_uri=embedded.uri).fetch()
    assert check_fit(restored, torch.nn.Linear(2, 2)) == ""
    assert check_fit(restored, build_model_from_config(parse_config(BASE))) == "its weights do not match its own config.yaml"
