"""`ipwatch doctor`: what in the PBX's NAT setup stands between a right address and working calls.

The package follows the pipeline: `gather.py` does all the I/O (the targets' files, dnsmgr.conf
and rtp.conf, the state file or the sources, the host's routes, Asterisk, the router); the checks
are pure functions over what it read — `pjsip.py`, `chan_sip.py`, `network.py`, and `live.py`
for what Asterisk runs — each returning findings (`findings.py`) and the safe fixes that
`fixes.py` turns into a diff. `audit.py` wires them for the CLI.
"""
