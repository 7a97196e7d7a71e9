#!/usr/bin/env bash
# Development certificates (never committed).
#   scripts/gen-certs.sh [DIR]
#       A development CA and a server certificate signed by it: DIR/ca.pem, DIR/ca.key,
#       DIR/server.pem, DIR/server.key (DIR defaults to certs/). The server certificate is
#       valid for localhost, 127.0.0.1 and ::1.
#   scripts/gen-certs.sh --leaf DIR NAME [OUT]
#       One more certificate signed by DIR's CA, for the DNS name NAME (e.g. a second SNI name,
#       or a renewal of localhost): DIR/OUT.pem and DIR/OUT.key (OUT defaults to NAME).
set -euo pipefail

leaf() { # leaf DIR NAME OUT SAN
  local dir=$1 name=$2 out=$3 san=$4
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=$name" -keyout "$dir/$out.key.tmp" -out "$dir/$out.csr" 2>/dev/null
  printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n' "$san" > "$dir/$out.ext"
  openssl x509 -req -in "$dir/$out.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial -days 30 \
    -extfile "$dir/$out.ext" -out "$dir/$out.pem.tmp" 2>/dev/null
  rm -f "$dir/$out.csr" "$dir/$out.ext" "$dir/ca.srl"
  # Renames, so a running gateway never reads a half-written file.
  mv "$dir/$out.key.tmp" "$dir/$out.key"
  mv "$dir/$out.pem.tmp" "$dir/$out.pem"
}

if [[ ${1:-} == --leaf ]]; then
  dir=${2:?usage: gen-certs.sh --leaf DIR NAME [OUT]}
  name=${3:?usage: gen-certs.sh --leaf DIR NAME [OUT]}
  out=${4:-$name}
  [[ -f $dir/ca.pem && -f $dir/ca.key ]] || { echo "no CA in $dir (run gen-certs.sh $dir first)" >&2; exit 1; }
  leaf "$dir" "$name" "$out" "DNS:$name"
  echo "wrote $dir/$out.pem $dir/$out.key"
  exit 0
fi

dir=${1:-certs}
mkdir -p "$dir"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -subj "/CN=Tollgate development CA" -keyout "$dir/ca.key" -out "$dir/ca.pem" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
leaf "$dir" localhost server "DNS:localhost,IP:127.0.0.1,IP:::1"
echo "wrote $dir/ca.pem $dir/server.pem $dir/server.key"
