"""Exit codes of the `newsletter` commands, documented in the README.

0   done
1   an error: bad input, a failure; one line on stderr says why
2   `newsletter status`: there is an alert (a day failed, was stopped, missed,
    paused with its articles stranded, or hit a content error), until it is dealt
    with or acknowledged (`newsletter status --ack DATE`)
3   `newsletter send`: the send was stopped on request (SIGINT, SIGTERM,
    `newsletter stop`, `newsletter pause`); nothing is uncertain, and
    `newsletter send --date D --resume` finishes it
4   `newsletter send`: the send ended unfinished: recipients not yet delivered (the
    relay deferred them, or it could not be waited for within --max-wait), or
    uncertain ones left open (uncertain_policy skip); `newsletter send --date D
    --resume` tries the deferred again, `--resume --uncertain resend|skip` decides
    the uncertain
75  `newsletter bounces ingest` reading stdin (an MTA pipe): a message could not be
    recorded; EX_TEMPFAIL tells the MTA to keep it and try again
"""
OK = 0
ERROR = 1
ALERT = 2
STOPPED = 3
UNFINISHED = 4
TEMPFAIL = 75
