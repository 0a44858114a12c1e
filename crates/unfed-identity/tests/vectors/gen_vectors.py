"""Independent known-answer vectors for crates/unfed-identity (see docs/protocol.md).

Encodes the six test payloads with its own encoder (not the Rust code) and signs them with
eth-account's `sign_message(encode_defunct(...))`, i.e. what an Ethereum wallet's
`personal_sign` produces. Run:

    python3 -m venv /tmp/ea && /tmp/ea/bin/pip install eth-account
    /tmp/ea/bin/python crates/unfed-identity/tests/vectors/gen_vectors.py

The output was produced with eth-account 0.14.0 and is committed in tests/known_answers.rs.
"""
import struct, eth_account
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils import keccak

KEY = "0x4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
KEY2 = "0xb25c7db31feed9122727bf0939dc769a96564b2de4c4726d035b36ecf1e5b364"
acct = Account.from_key(KEY)
acct2 = Account.from_key(KEY2)
ident = bytes.fromhex(acct.address[2:])
ident2 = bytes.fromhex(acct2.address[2:])
def s(b): return struct.pack(">H", len(b)) + b
hdr = b"UNFED" + bytes([1])
reg = hdr + bytes([1]) + ident + s(b"127.0.0.1:7001") + s(b"smollm2-135m") + struct.pack(">I", 1) \
    + bytes.fromhex("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53") + s(bytes(range(32))) \
    + bytes([0]) + struct.pack(">Q", 1700000000000) + struct.pack(">Q", 42)
# MPC pair: party A (KEY) names party B (KEY2), and B names A; shard 0; role byte then peer.
def mpc_reg(ident, addr, onion, role, peer, ts, nonce):
    return hdr + bytes([1]) + ident + s(addr) + s(b"smollm2-135m") + struct.pack(">I", 0) \
        + bytes.fromhex("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53") + s(onion) \
        + bytes([role]) + peer + struct.pack(">Q", ts) + struct.pack(">Q", nonce)
reg_a = mpc_reg(ident, b"127.0.0.1:7001", bytes(range(32, 64)), 1, ident2, 1700000090000, 45)
reg_b = mpc_reg(ident2, b"127.0.0.1:7002", bytes(range(64, 96)), 2, ident, 1700000090000, 46)
hb = hdr + bytes([2]) + ident + s(b"127.0.0.1:7001") + struct.pack(">I", 3) + struct.pack(">Q", 1700000030000) + struct.pack(">Q", 43)
un = hdr + bytes([3]) + ident + s("nöde.example:443".encode()) + struct.pack(">Q", 1700000060000) + struct.pack(">Q", 44)
# A guard relay (KEY) registers: identity, address, onion key, timestamp, nonce.
guard = hdr + bytes([4]) + ident + s(b"guard.example:443") + s(bytes(range(96, 128))) \
    + struct.pack(">Q", 1700000120000) + struct.pack(">Q", 47)
print("eth-account", eth_account.__version__ if hasattr(eth_account, "__version__") else "?")
print("address", acct.address)
for name, p, signer in [("register", reg, acct), ("heartbeat", hb, acct), ("unregister", un, acct),
                        ("register party A", reg_a, acct), ("register party B", reg_b, acct2),
                        ("register guard", guard, acct)]:
    sm = signer.sign_message(encode_defunct(primitive=p))
    print(name, len(p)); print(" enc", p.hex()); print(" hash", sm.message_hash.hex() if hasattr(sm,'message_hash') else sm.messageHash.hex()); print(" sig", sm.signature.hex())
for msg in [b"Some data", b"hello", b""]:
    sm = acct.sign_message(encode_defunct(primitive=msg))
    print(repr(msg)); print(" hash", sm.message_hash.hex()); print(" sig", sm.signature.hex())
sm = Account.sign_message(encode_defunct(text="I♥SF"), "0xb25c7db31feed9122727bf0939dc769a96564b2de4c4726d035b36ecf1e5b364")
print("I♥SF", sm.signature.hex(), Account.from_key("0xb25c7db31feed9122727bf0939dc769a96564b2de4c4726d035b36ecf1e5b364").address)
print("keccak empty", keccak(b"").hex())
