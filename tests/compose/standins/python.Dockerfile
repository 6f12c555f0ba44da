# Stand-in for python:3.11-slim-bookworm: Debian's Python 3.11 where the stock image has its own.
FROM asgi-gateway-standin/bookworm
RUN ln -s /usr/bin/python3 /usr/local/bin/python
# Test-only: this machine reaches PyPI through a proxy whose CA is in the host's bundle.
COPY host-ca.crt /usr/local/share/ca-certificates/host-ca.crt
RUN printf '[global]\ncert = /usr/local/share/ca-certificates/host-ca.crt\n' > /etc/pip.conf
ENV LANG=C.UTF-8
CMD ["python3"]
