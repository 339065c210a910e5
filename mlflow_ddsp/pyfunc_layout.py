"""The pyfunc file set: what makes a checkpoint version an MLflow pyfunc model. A leaf (no imports).

``serving/model_files.py`` writes these files beside every version's checkpoint
(with MLflow's help); ``serving/resolve.py`` looks for the ``MLmodel`` before it
serves a version; ``checkpoint/`` treats them as auxiliary files (never
essential, ``checkpoint/files.py``) and needs their names without importing
``serving/``. ``tests/test_layout.py`` checks that :data:`PYFUNC_FILES` is
exactly what ``pyfunc_files()`` writes.
"""

__all__ = [
    "MLMODEL_FILE",
    "REQUIREMENTS_FILE",
    "PYTHON_ENV_FILE",
    "INPUT_EXAMPLE_FILES",
    "PYFUNC_FILES",
    "LOADER_MODULE",
]

MLMODEL_FILE = "MLmodel"
REQUIREMENTS_FILE = "requirements.txt"
PYTHON_ENV_FILE = "python_env.yaml"
INPUT_EXAMPLE_FILES = ("input_example.json", "serving_input_example.json")  # written by MLflow's _save_example
PYFUNC_FILES = frozenset({MLMODEL_FILE, REQUIREMENTS_FILE, PYTHON_ENV_FILE, *INPUT_EXAMPLE_FILES})

LOADER_MODULE = "mlflow_ddsp.serving.pyfunc"  # the python_function flavor's loader_module
