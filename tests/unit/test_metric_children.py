"""The services' metric types remember their children and export as before."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from libs.observability.metrics import Counter, Gauge, Histogram


def test_labels_returns_the_same_child_for_the_same_values() -> None:
    registry = CollectorRegistry()
    c = Counter("t_events_total", "events", ["strategy", "type"], registry=registry)
    assert c.labels(strategy="a", type="Fill") is c.labels(strategy="a", type="Fill")
    assert c.labels("a", "Fill") is not c.labels("b", "Fill")


def test_every_way_of_naming_labels_counts_in_one_series() -> None:
    registry = CollectorRegistry()
    c = Counter("t_events_total", "events", ["strategy", "type"], registry=registry)
    c.labels(strategy="a", type="Fill").inc()
    c.labels(type="Fill", strategy="a").inc()
    c.labels("a", "Fill").inc(2)
    c.labels("b", "Fill").inc()
    assert registry.get_sample_value("t_events_total", {"strategy": "a", "type": "Fill"}) == 4
    assert registry.get_sample_value("t_events_total", {"strategy": "b", "type": "Fill"}) == 1


def test_gauges_and_histograms_export_what_their_children_saw() -> None:
    registry = CollectorRegistry()
    g = Gauge("t_depth", "depth", ["strategy"], registry=registry)
    h = Histogram("t_seconds", "time", ["strategy"], buckets=(0.1, 1.0), registry=registry)
    for v in (3, 5):
        g.labels(strategy="a").set(v)
        h.labels(strategy="a").observe(v / 10)
    assert registry.get_sample_value("t_depth", {"strategy": "a"}) == 5
    assert registry.get_sample_value("t_seconds_count", {"strategy": "a"}) == 2
    assert registry.get_sample_value("t_seconds_bucket", {"strategy": "a", "le": "1.0"}) == 2
    assert b't_depth{strategy="a"} 5.0' in generate_latest(registry)
