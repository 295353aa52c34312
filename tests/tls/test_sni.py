"""SNI selection, pure: exact, then one-label wildcard, then the first certificate."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from edge.tls.sni import SniIndex, matches, names_of

CERTS = [["default.test"], ["a.test", "www.a.test"], ["*.wild.test"], ["exact.wild.test"], ["*.a.test"]]
INDEX = SniIndex.build(CERTS)


def test_exact_name_wins() -> None:
    assert INDEX.select("a.test") == 1
    assert INDEX.select("www.a.test") == 1  # exact beats the later *.a.test


def test_exact_beats_wildcard_even_when_listed_later() -> None:
    assert INDEX.select("exact.wild.test") == 3
    assert INDEX.select("other.wild.test") == 2


def test_wildcard_covers_exactly_one_label() -> None:
    assert INDEX.select("x.wild.test") == 2
    assert INDEX.select("a.b.wild.test") == 0
    assert INDEX.select("wild.test") == 0


def test_unknown_absent_and_empty_names_get_the_first() -> None:
    assert INDEX.select("nothing.example") == 0
    assert INDEX.select(None) == 0
    assert INDEX.select("") == 0
    assert INDEX.select("localhost") == 0


def test_case_and_trailing_dot_do_not_matter() -> None:
    assert INDEX.select("A.Test.") == 1
    assert INDEX.select("X.WILD.TEST") == 2


def test_first_certificate_wins_a_duplicate_name() -> None:
    index = SniIndex.build([["dup.test"], ["dup.test"], ["*.w.test"], ["*.w.test"]])
    assert index.select("dup.test") == 0
    assert index.select("q.w.test") == 2


def test_partial_wildcards_are_ignored() -> None:
    index = SniIndex.build([["default.test"], ["f*.example.com"]])
    assert index.select("foo.example.com") == 0


def test_no_certificate_selects_nothing() -> None:
    assert SniIndex.build([]).select("a.test") is None


def test_names_come_from_san_with_cn_as_fallback() -> None:
    assert names_of(["A.test", "a.test", "b.test."], "ignored.test") == ("a.test", "b.test")
    assert names_of([], "Legacy.Test") == ("legacy.test",)
    assert names_of([], None) == ()


label = st.text(alphabet="abcx-", min_size=1, max_size=3).filter(lambda s: not s.startswith("-"))
dns = st.lists(label, min_size=1, max_size=4).map(".".join)
cert_name = st.one_of(dns, dns.map(lambda d: "*." + d))


def reference(certs: list[list[str]], server_name: str | None) -> int | None:
    """The rule as the policy states it, written the slow and obvious way."""
    if not certs:
        return None
    if server_name:
        for i, names in enumerate(certs):
            if any(not n.startswith("*.") and matches(n, server_name) for n in names):
                return i
        for i, names in enumerate(certs):
            if any(n.startswith("*.") and matches(n, server_name) for n in names):
                return i
    return 0


@given(st.lists(st.lists(cert_name, min_size=1, max_size=3), max_size=5), st.one_of(st.none(), dns))
def test_index_agrees_with_the_stated_rule(certs: list[list[str]], server_name: str | None) -> None:
    assert SniIndex.build(certs).select(server_name) == reference(certs, server_name)


@given(st.lists(st.lists(cert_name, min_size=1, max_size=3), min_size=1, max_size=5), dns)
def test_a_non_default_choice_always_covers_the_name(certs: list[list[str]], server_name: str) -> None:
    chosen = SniIndex.build(certs).select(server_name)
    assert chosen is not None
    if chosen != 0:
        assert any(matches(n, server_name) for n in certs[chosen])
