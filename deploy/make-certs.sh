#!/bin/sh
# A private certificate authority and one server certificate, for a trial or for a site that
# has no PKI of its own. The server certificate serves the broker's TLS listener and the API
# proxy; it names every NAME given (a host name, or an IPv4/IPv6 address).
#
#   deploy/make-certs.sh DIR NAME [NAME...]
#   deploy/make-certs.sh deploy/certs mosquitto localhost broker.clinic.lan api.clinic.lan
#
# DIR gets ca.pem (give it to the devices and to equipwatch), ca.key (keep it offline),
# server.pem and server.key. An existing CA in DIR is reused, so running it again with other
# names re-issues the server certificate without invalidating the devices' CA file.
set -eu
if [ "$#" -lt 2 ]; then
    echo "usage: $0 DIR NAME [NAME...]" >&2
    exit 2
fi
dir=$1
shift
umask 077
mkdir -p "$dir"
cd "$dir"

san=""
for name in "$@"; do
    case "$name" in
        *[!0-9.]*) case "$name" in *:*) kind=IP ;; *) kind=DNS ;; esac ;;
        *) kind=IP ;;
    esac
    san="${san:+$san,}$kind:$name"
done

if [ ! -f ca.key ]; then
    openssl req -x509 -newkey rsa:3072 -nodes -days 3650 -sha256 \
        -keyout ca.key -out ca.pem -subj "/CN=equipwatch private CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
fi
openssl req -newkey rsa:3072 -nodes -sha256 -keyout server.key -out server.csr -subj "/CN=$1"
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' "$san" \
    > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 -sha256 \
    -extfile server.ext -out server.pem
rm -f server.csr server.ext
# The containers read the key as their own non-root users (mosquitto, nginx); the directory
# itself stays private to root.
chmod 0644 ca.pem server.pem server.key
chmod 0600 ca.key
chmod 0700 .
echo "made $dir/server.pem for $san, signed by $dir/ca.pem"
