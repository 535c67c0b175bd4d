"""The reading room: the queue and case pages, decisions, sign-out, exports of the audit
trail and agreement statistics. Imports inference and cases; nothing imports it."""
