"""The poll: what the exporter reads from the Neo API each interval, and how it counts it.

Modules:

- ``poller``: the loop (``Poller``): a ``PollCycle`` every interval, committed to the
  ledger in one transaction, with what lasts between polls.
- ``cycle``: one poll (``PollCycle``): its working set and its phases, in order.
- ``policy``: the rules, as pure functions over plain values (tested by table).
- ``fetch``: every API read a poll makes, and every failure met, in one place.
- ``timing``: the timing rules, one object handed in (``Timing``).
- ``report``: what a poll did (``PollReport``), for its log line and the tests.

Glossary of the terms the code uses:

run
    One execution of a task (a *stream* in the API); the ledger's unit of counting,
    keyed by its stream ID. A task has one run, or more once *continued*.
row
    A usage row of ``/usage/streams``: one run's cumulative figures at one moment.
observation
    A row reduced to the integers the ledger counts (``accounting.Observation``).
fold
    Applying a poll's observations to their runs' stored state: what grew is counted.
baseline
    The start of the first poll's window. A run that started before it is *history*:
    only what it grows after its first sight counts (a history *backfill* adds the rest).
baselined
    Of a run: started before the baseline, so taken for history.
in doubt (unconfirmed)
    A new run whose row dates it before the baseline while its task's details (which
    alone tell a run's own start) did not answer: taken for history until they do, and
    counted in full if they show it started after the baseline (*confirmed*).
full listing
    A listing of the whole lookback window (every ``full_list_interval``); the polls in
    between list only *recent* starts.
live
    Of a task: pending or active by its details or the task list; read by ID every poll.
awaited
    A run that task details call finished but whose finished row the ledger has not
    counted yet: its task's runs are read by ID until it has (or the exporter *gives up*
    after ``Timing.give_up_after``).
done
    Of an awaited run: finished in the ledger (and not in doubt), or by a row of this poll.
settling / followed
    A task whose run just ended while its start is about to leave what every poll lists:
    its runs are read by ID for ``settle_grace`` (*followed*), as a run's usage may grow
    once more after its first finished row.
flagged
    Of a task: live, awaiting or followed; what a poll reads beyond the listings.
gone
    A task whose details or runs answered 404 to a read that follows it: deleted, or no
    longer visible; followed no more.
unanswered
    Tasks whose details were asked for a run's start and did not answer, but may
    (``ApiError.lasting`` false): not asked twice in a poll, asked again next poll.
lasting
    Of an API error: asking again cannot help (a 4xx other than 401, 408 and 429).
pinned
    A task named in ``TASK_IDS``: its usage read by ID every poll, whatever its age.
hot / evicted
    Memory holds the runs and tasks of the last ``hot_lookbacks`` lookbacks (and the
    flagged and pinned ones); older ones are *evicted* to the file, which keeps them all.
fingerprint
    A digest of what a row says that the ledger counts: an unchanged row is skipped.
"""

from exporter.poll.poller import Poller
from exporter.poll.report import PollReport
from exporter.poll.timing import Timing

__all__ = ["PollReport", "Poller", "Timing"]
