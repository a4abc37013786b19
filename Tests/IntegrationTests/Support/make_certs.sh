#!/usr/bin/env bash
# Certificates for the TLS tests, made with the openssl CLI in directory $1:
#   ca.pem/ca.key          a test CA
#   a.pem/a.key            for a.example.com and *.a.example.com
#   default.pem/.key       for default.example.com (served when SNI matches nothing)
#   other.pem/.key         another default (CN other.example.com), for the reload test
#   client.pem/.key        a client certificate signed by the CA
#   rogue.pem/.key         a client certificate signed by nobody we trust
#   expired.pem/.key       signed by the CA, valid only in 2020
#   weir-side, envoy-side, rogue-side (.pem/.key)
#                          SPIFFE workload identities (URI SANs spiffe://cluster.local/ns/default/sa/NAME,
#                          rogue-side's is sa/rogue) signed by the CA, as Istio's CA issues them;
#                          weir-side-2 is weir-side's identity reissued
#   a.ocsp                 a DER OCSP response for a.pem (for ocsp_staple)
set -euo pipefail
dir=$1
mkdir -p "$dir"
cd "$dir"
q() { "$@" >/dev/null 2>&1; }
q openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 30 -subj "/CN=Weir Test CA"
leaf() { # name cn san [extra ext]
  q openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "/CN=$2"
  printf "subjectAltName=%s\n%s\n" "$3" "${4:-}" > "$1.ext"
  q openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -out "$1.pem" -days 30 -extfile "$1.ext"
}
leaf a a.example.com "DNS:a.example.com,DNS:*.a.example.com"
leaf default default.example.com "DNS:default.example.com"
leaf other other.example.com "DNS:other.example.com"
leaf client client.example.com "DNS:client.example.com" "extendedKeyUsage=clientAuth"
for id in weir-side envoy-side; do
  leaf "$id" "$id" "URI:spiffe://cluster.local/ns/default/sa/$id" "extendedKeyUsage=serverAuth,clientAuth"
done
# The same identity, reissued (a rotation).
leaf weir-side-2 weir-side "URI:spiffe://cluster.local/ns/default/sa/weir-side" "extendedKeyUsage=serverAuth,clientAuth"
leaf rogue-side rogue-side "URI:spiffe://cluster.local/ns/default/sa/rogue" "extendedKeyUsage=serverAuth,clientAuth"
q openssl req -x509 -newkey rsa:2048 -nodes -keyout rogue.key -out rogue.pem -days 30 -subj "/CN=rogue"
# An expired certificate needs explicit dates: `openssl ca` takes them.
q openssl req -newkey rsa:2048 -nodes -keyout expired.key -out expired.csr -subj "/CN=expired.example.com"
: > index.txt
echo 1000 > serial
cat > ca.cnf <<EOF
[ca]
default_ca = test
[test]
database = index.txt
new_certs_dir = .
serial = serial
default_md = sha256
policy = any
[any]
commonName = supplied
EOF
q openssl ca -batch -config ca.cnf -cert ca.pem -keyfile ca.key -in expired.csr -out expired.pem \
  -startdate 20200101000000Z -enddate 20200102000000Z
test -s expired.pem
# An OCSP response for a.pem, as a responder would staple it (signed by the CA; a.pem is not in
# the CA's index, so its status is "unknown", but the response itself is a successful one).
q openssl ocsp -issuer ca.pem -cert a.pem -reqout a.ocsp-request -no_nonce
q openssl ocsp -index index.txt -CA ca.pem -rsigner ca.pem -rkey ca.key -reqin a.ocsp-request -respout a.ocsp -ndays 2
test -s a.ocsp
