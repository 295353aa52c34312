"""Blocking ACME calls through the ``acme`` package: directory, account, orders, finalization.

Every method here blocks on the network and must run in the manager's worker thread, one call
at a time (``acme.client.ClientNetwork`` keeps a nonce pool and a requests session that are not
thread-safe). Challenge answers are *not* placed from here: ``order`` returns what to answer,
the manager's loop-thread code presents it, and only then ``answer`` tells the CA to look.

``ca_bundle`` becomes requests' ``verify=``: the CA file trusted for the directory's HTTPS
(step-ca, Pebble); None uses the system trust store.

Knows nothing of storage layout, the terminator or the schedule.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

import josepy as jose
from acme import client as acme_client
from acme import crypto_util, errors, messages
from cryptography.hazmat.primitives.asymmetric import ec

from edge.acme.challenge import HTTP01, TLS_ALPN01

log = logging.getLogger("edge.acme")

USER_AGENT = "edge-acme"
# Per HTTP request to the CA. Also bounds how long a stop waits for a call in flight.
NETWORK_TIMEOUT = 30
# One order from "new" to "certificate downloaded"; validation by a busy CA can take a while.
ORDER_TIMEOUT = dt.timedelta(seconds=90)


class AcmeFailure(Exception):
    """An ACME step failed; the message is for the log and ``status()``, one line."""


@dataclass(frozen=True, slots=True)
class Task:
    """One authorization to prove: answer ``token`` with ``key_authorization`` for ``host``."""

    host: str
    kind: str  # HTTP01 | TLS_ALPN01
    token: str  # URL-safe base64, as in the HTTP-01 path
    key_authorization: str
    challb: messages.ChallengeBody


class AcmeClient:
    """One account at one ACME directory."""

    def __init__(self, directory_url: str, account_key: ec.EllipticCurvePrivateKey, *,
                 email: str | None = None, ca_bundle: str | None = None) -> None:
        self.directory_url = directory_url
        self.email = email
        self.jwk = jose.JWKEC(key=account_key)
        verify: bool | str = ca_bundle if ca_bundle else True
        self._net = acme_client.ClientNetwork(self.jwk, alg=jose.ES256, verify_ssl=verify,  # type: ignore[arg-type]
                                              user_agent=USER_AGENT, timeout=NETWORK_TIMEOUT)
        self._client: acme_client.ClientV2 | None = None
        self.account_uri: str | None = None

    def register(self) -> str:
        """Fetch the directory and find or create the account for our key; returns its URL.

        Asking with the key every start (instead of trusting a stored URL) survives a CA that
        lost its state (Pebble on restart) and a directory that changed in the policy.
        """
        try:
            directory = acme_client.ClientV2.get_directory(self.directory_url, self._net)
            client = acme_client.ClientV2(directory, self._net)
            registration = messages.NewRegistration.from_data(email=self.email, terms_of_service_agreed=True)
            try:
                regr = client.new_account(registration)
            except errors.ConflictError as existing:  # this key has an account already
                regr = messages.RegistrationResource(uri=existing.location, body=messages.Registration())
                self._net.account = regr
        except Exception as exc:
            raise AcmeFailure(f"account at {self.directory_url}: {describe(exc)}") from exc
        self._client = client
        self.account_uri = regr.uri
        return regr.uri

    def order(self, host: str, key_pem: bytes, kind: str) -> tuple[messages.OrderResource, list[Task]]:
        """Open an order for ``host``; returns it and the challenges still to answer.

        Authorizations the CA already holds as valid (reuse) need no answer.
        """
        client = self._need_client()
        csr = crypto_util.make_csr(key_pem, [host])
        try:
            order = client.new_order(csr)
        except Exception as exc:
            raise AcmeFailure(f"new order for {host}: {describe(exc)}") from exc
        tasks = []
        for authzr in order.authorizations:
            if authzr.body.status == messages.STATUS_VALID:
                continue
            name = authzr.body.identifier.value
            for challb in authzr.body.challenges:
                if challb.chall.typ == kind:
                    chall = challb.chall
                    tasks.append(Task(name, kind, chall.encode("token"), chall.key_authorization(self.jwk), challb))
                    break
            else:
                offered = ", ".join(c.chall.typ for c in authzr.body.challenges) or "none"
                raise AcmeFailure(f"{name}: the CA does not offer {kind} (offers {offered})")
        return order, tasks

    def answer(self, task: Task) -> None:
        """Tell the CA the answer for ``task`` is in place and it may validate."""
        client = self._need_client()
        try:
            client.answer_challenge(task.challb, task.challb.chall.response(self.jwk))
        except Exception as exc:
            raise AcmeFailure(f"{task.host}: answering {task.kind}: {describe(exc)}") from exc

    def wait_valid(self, order: messages.OrderResource, deadline: dt.datetime) -> messages.OrderResource:
        """Poll until every authorization is decided; raises with the CA's reason if one failed.

        ``deadline`` is naive local time, as the ``acme`` package compares it.
        """
        client = self._need_client()
        try:
            return client.poll_authorizations(order, deadline)
        except errors.ValidationError as exc:
            raise AcmeFailure(_validation_reason(exc)) from exc
        except Exception as exc:
            raise AcmeFailure(f"waiting for validation: {describe(exc)}") from exc

    def finalize(self, order: messages.OrderResource, deadline: dt.datetime) -> bytes:
        """Send the CSR and download the full chain (PEM)."""
        client = self._need_client()
        try:
            done = client.finalize_order(order, deadline)
        except Exception as exc:
            raise AcmeFailure(f"finalizing the order: {describe(exc)}") from exc
        if not done.fullchain_pem:
            raise AcmeFailure("the CA returned no certificate")
        return done.fullchain_pem.encode("ascii")

    def _need_client(self) -> acme_client.ClientV2:
        if self._client is None:
            raise AcmeFailure("no account yet")
        return self._client


def deadline_after(timeout: dt.timedelta = ORDER_TIMEOUT) -> dt.datetime:
    """A deadline in the form ``acme`` wants (naive, local time)."""
    return dt.datetime.now() + timeout


def describe(exc: BaseException) -> str:
    """One line for the log: the CA's problem document when there is one."""
    if isinstance(exc, messages.Error):
        return f"{exc.code or exc.typ}: {exc.detail or exc.title or exc.description or ''}".rstrip(": ")
    if isinstance(exc, errors.TimeoutError):
        return "timed out waiting for the CA"
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:300]


def _validation_reason(exc: errors.ValidationError) -> str:
    reasons = []
    for authzr in exc.failed_authzrs:
        name = authzr.body.identifier.value
        for challb in authzr.body.challenges:
            if challb.error is not None:
                reasons.append(f"{name}: {challb.chall.typ} failed: {describe(challb.error)}")
    return "; ".join(reasons) or "validation failed"


__all__ = ["HTTP01", "TLS_ALPN01", "AcmeClient", "AcmeFailure", "Task", "deadline_after", "describe"]
