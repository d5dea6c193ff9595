"""derbus ev_charging: OCPP central system, EV smart charging and price series."""
