"""``python -m mlflow_ddsp`` is the ``mlflow-ddsp`` command."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="mlflow-ddsp")
