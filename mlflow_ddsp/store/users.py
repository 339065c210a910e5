"""Who the store's credentials are: the signed-in user of a basic-auth server.

A part of :class:`~mlflow_ddsp.store.RegistryStore` (a mixin: it uses the store's
``tracking_uri`` and ``_calling``). A basic-auth server (``mlflow server --app-name
basic-auth``) hides from a user the experiments he may not read (they are absent from
listings, no HTTP 403), so a store-wide decision made from listings (``gc``'s dependency
collection) needs to know whether the user sees everything: only an admin does.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["CURRENT_USER_ENDPOINT", "CurrentUser", "UsersPart"]

# MLflow's basic-auth app (mlflow/server/auth/routes.py GET_CURRENT_USER, handler
# ``get_current_user``): {"user": {"id", "username", "is_admin"}, "is_basic_auth"}; a server
# without the auth app answers 404.
CURRENT_USER_ENDPOINT = "/api/2.0/mlflow/users/current"


class CurrentUser(NamedTuple):
    """The signed-in user of a basic-auth server."""

    username: str
    is_admin: bool


class UsersPart:
    """The signed-in user (see :class:`~mlflow_ddsp.store.RegistryStore`)."""

    def current_user(self) -> CurrentUser | None:
        """``(username, is_admin)`` of the credentials this store sends, None where there are no
        users: a local store (SQLite, a folder), or a server without the auth app (HTTP 404).

        One request, with the store's own host credentials (``MLFLOW_TRACKING_USERNAME`` /
        ``MLFLOW_TRACKING_PASSWORD`` / token, as MLflow's client sends them).

        Raises:
            NotAuthenticatedError: wrong or missing credentials (HTTP 401).
            TrackingServerUnavailable: the server does not answer.
            RegistryError: any other refusal.
        """
        if not self.tracking_uri.startswith(("http://", "https://")):
            return None
        # heavy: imported on first use (tests/test_cli_startup.py)
        from mlflow.utils.credentials import get_default_host_creds
        from mlflow.utils.rest_utils import http_request, verify_rest_response

        with self._calling("read the signed-in user", needs=("READ", "the signed-in user")):
            response = http_request(get_default_host_creds(self.tracking_uri), CURRENT_USER_ENDPOINT, "GET")
            if response.status_code == 404:
                return None
            body = verify_rest_response(response, CURRENT_USER_ENDPOINT).json()
        user = body.get("user") or {}
        return CurrentUser(str(user.get("username", "")), bool(user.get("is_admin", False)))
