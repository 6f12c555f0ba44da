"""The demo served by ``config/gateway.yaml``: a page with a chat room over WebSocket.

Plain consumers on the in-memory layer; no Django. Other protocols' demo routes forward what
they receive to the page's ``demo`` group, so a message in any protocol shows up live.
"""
