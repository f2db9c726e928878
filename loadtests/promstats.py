"""Means of the services' own Prometheus histograms over a benchmark's run.

A benchmark scrapes every service it wants before and after a run; the mean of a histogram over
the run is the change in its ``_sum`` over the change in its ``_count``. The services measure
their own phases (a batch's lock and read, decide, write), so the figures say where the time
went without timers added for the occasion.
"""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

Totals = dict[tuple[str, str, tuple[tuple[str, str], ...]], float]
"""(family, sample name, labels) -> value, for every _sum and _count sample of one scrape."""

Series = tuple[tuple[str, ...], str, dict[str, str]]
"""The sources to add up, a histogram family, and the labels that pick its series."""

SCRAPE_TIMEOUT_S = 10.0


async def histogram_totals(session: aiohttp.ClientSession, url: str) -> Totals:
    timeout = aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT_S)
    async with session.get(url, timeout=timeout) as response:
        response.raise_for_status()
        return totals_of(await response.text())


def totals_of(text: str) -> Totals:
    """The _sum and _count samples of a Prometheus text exposition."""
    totals: Totals = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith(("_sum", "_count")):
                totals[(family.name, sample.name, tuple(sorted(sample.labels.items())))] = (
                    sample.value
                )
    return totals


async def scrape(urls: dict[str, str]) -> dict[str, Totals]:
    """Each source's totals, by the name its URL is given under."""
    async with aiohttp.ClientSession() as session:
        return {source: await histogram_totals(session, url) for source, url in urls.items()}


def means_ms(
    before: dict[str, Totals], after: dict[str, Totals], wanted: dict[str, Series]
) -> dict[str, float | None]:
    """Mean milliseconds of each wanted series (of seconds) between two scrapes."""
    return means(before, after, wanted, scale=1000)


def means(
    before: dict[str, Totals],
    after: dict[str, Totals],
    wanted: dict[str, Series],
    *,
    scale: float = 1.0,
) -> dict[str, float | None]:
    """Mean of each wanted series between two scrapes, times scale; None where none observed."""
    result: dict[str, float | None] = {}
    for name, (sources, family, labels) in wanted.items():
        sums = counts = 0.0
        for source in sources:
            for (fam, sample, sample_labels), value in after[source].items():
                if fam != family or not set(labels.items()) <= set(sample_labels):
                    continue
                delta = value - before[source].get((fam, sample, sample_labels), 0.0)
                if sample.endswith("_sum"):
                    sums += delta
                else:
                    counts += delta
        result[name] = round(scale * sums / counts, 3) if counts else None
    return result
