# SPDX-License-Identifier: Apache-2.0
"""The Python SDK against a `statestream serve` with TLS and mutual TLS.

Throwaway certificates are made with the `openssl` command line."""
import os
import shutil
import subprocess

import grpc
import pytest

from statestream import Client, StatestreamError
from statestream.testing import ServeProcess

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None,
                                reason="needs the openssl command")

CERTS = r"""set -e
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }
key ca.key
openssl req -x509 -new -key ca.key -out ca.pem -days 2 -subj /CN=test-ca
key other-ca.key
openssl req -x509 -new -key other-ca.key -out other-ca.pem -days 2 -subj /CN=other
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > server.ext
printf 'extendedKeyUsage=clientAuth\n' > client.ext
for n in server client; do
  key $n.key
  openssl req -new -key $n.key -out $n.csr -subj /CN=$n
  openssl x509 -req -in $n.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out $n.pem -days 2 -extfile $n.ext
done
"""


@pytest.fixture
def certs(tmp_path):
    subprocess.run(["sh", "-c", CERTS], cwd=tmp_path, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path)}, \
        tmp_path


def serve(tmp_path, mutual=False):
    args = [f"--tls-cert={tmp_path / 'server.pem'}",
            f"--tls-key={tmp_path / 'server.key'}"]
    if mutual:
        args.append(f"--tls-client-ca={tmp_path / 'ca.pem'}")
    return ServeProcess(os.environ.get("STATESTREAM_BIN"), extra_args=args)


def roundtrip(client):
    client.create_session("s")
    s = client.session("s")
    ack = s.append("hello over TLS")
    assert ack.input_offset == 14
    result = s.generate_text(max_tokens=8, seed=1)
    assert len(result.tokens) == 8


def test_tls_with_ca(certs):
    files, path = certs
    with serve(path) as server:
        with Client(server.address, tls=True, root_certificates=files["ca.pem"],
                    tls_server_name="localhost", max_attempts=1) as c:
            roundtrip(c)


def test_plaintext_and_wrong_ca_are_refused(certs):
    files, path = certs
    with serve(path) as server:
        with Client(server.address, max_attempts=1, timeout=30) as c:
            with pytest.raises(StatestreamError) as e:
                list(c.list_sessions())
            assert e.value.code == grpc.StatusCode.UNAVAILABLE
        with Client(server.address, tls=True,
                    root_certificates=files["other-ca.pem"],
                    max_attempts=1, timeout=30) as c:
            with pytest.raises(StatestreamError) as e:
                list(c.list_sessions())
            assert e.value.code == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls(certs):
    files, path = certs
    with serve(path, mutual=True) as server:
        with Client(server.address, tls=True, root_certificates=files["ca.pem"],
                    private_key=files["client.key"],
                    certificate_chain=files["client.pem"],
                    max_attempts=1) as c:
            roundtrip(c)
        with Client(server.address, tls=True, root_certificates=files["ca.pem"],
                    max_attempts=1, timeout=30) as c:
            with pytest.raises(StatestreamError) as e:
                list(c.list_sessions())
            assert e.value.code == grpc.StatusCode.UNAVAILABLE
