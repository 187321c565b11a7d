"""Delivering quota notifications: signed webhooks and Kubernetes Events on the Quota.

The worker writes each threshold crossing to the namespace's notifications topic in the same
transaction as the usage that crossed it (:mod:`kmeter.worker.quotas`): that topic is the
durable outbox. :mod:`.dispatcher` consumes it and delivers, at least once; :mod:`.webhook`
signs and POSTs; :mod:`.events` writes the Kubernetes Event.
"""
