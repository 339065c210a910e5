"""The harness for the test suite and the benchmarks, not the product.

Throwaway real services on 127.0.0.1 and a free port, each dying with the process
that started it:

* :mod:`mlflow_ddsp.testing.server`: an ``mlflow server`` (SQLite backend, proxied
  artifacts) and ``mlflow models serve`` of one model version;
* :mod:`mlflow_ddsp.testing.postgres`: a PostgreSQL cluster for a team-shaped server;
* :mod:`mlflow_ddsp.testing.s3`: an S3-compatible object store (SeaweedFS).

``tests/conftest.py`` and ``bench/*.py`` start them; no product module imports this
package (``tests/test_layout.py`` checks it).
"""

__all__: list[str] = []
