"""Notifications: who hears about what, on which channel, exactly once.

    events.py      Event (what a rule produces) and the stable keys that identify it
    routing.py     Router: recipients and channels for an event, by role, kind and severity
    smtp.py        EmailChannel        (aiosmtplib)
    webhook.py     WebhookChannel      (httpx; HMAC-SHA256 signed JSON, retried with backoff)
    mqtt.py        MqttChannel         (aiomqtt; QoS 1 alerts on a topic template)
    payload.py     the JSON a webhook receives and an MQTT alert carries
    channels.py    the Channel contract, and build_channels from the site's settings
    dispatcher.py  Dispatcher: route, claim in the notification log, send, record, retry
    digest.py      the manager's daily digest (text and HTML) and when it is due
    errors.py      DeliveryError, MissingSecret, InvalidEvent

The settings are core.notify_config (the ``notifications:`` section of the site file); the
notification log contract is core.notices.
"""
