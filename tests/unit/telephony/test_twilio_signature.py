"""X-Twilio-Signature and the access rule for /twilio/*."""

from quillman.config import TelephonyConfig
from quillman.telephony.signature import TwilioAccess, called_url, configured_token, twilio_signature

URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
PARAMS = {"CallSid": "CA1234567890ABCDE", "Caller": "+12349013030", "Digits": "1234",
          "From": "+12349013030", "To": "+18005551212"}


def test_signature_matches_twilios_published_example():
    assert twilio_signature("12345", URL, PARAMS) == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="


def test_with_a_token_only_signed_requests_pass():
    access = TwilioAccess("12345", api_keys_set=True)
    assert access.check(URL, {"x-twilio-signature": "0/KCTR6DLpKmkAf8muzZqo1nDgQ="}, PARAMS) is None
    assert access.check(URL, {"x-twilio-signature": "wrong"}, PARAMS).code == "invalid_twilio_signature"
    assert access.check(URL, {}, PARAMS).code == "invalid_twilio_signature"
    assert access.check(URL, {"x-twilio-signature": "0/KCTR6DLpKmkAf8muzZqo1nDgQ="},
                        {**PARAMS, "Digits": "9"}).code == "invalid_twilio_signature"
    assert access.startup_warning("TWILIO_AUTH_TOKEN") is None


def test_keys_without_a_token_refuse_twilio_and_say_so_at_startup():
    access = TwilioAccess(None, api_keys_set=True)
    assert access.check(URL, {}, PARAMS).code == "twilio_disabled"
    assert "TWILIO_AUTH_TOKEN" in access.startup_warning("TWILIO_AUTH_TOKEN")


def test_no_keys_and_no_token_is_open_like_the_rest_of_the_server():
    assert TwilioAccess(None, api_keys_set=False).check(URL, {}) is None


def test_token_from_config_or_env():
    assert configured_token(TelephonyConfig(auth_token="abc"), {}) == "abc"
    assert configured_token(TelephonyConfig(), {"TWILIO_AUTH_TOKEN": " xyz "}) == "xyz"
    assert configured_token(TelephonyConfig(), {"TWILIO_AUTH_TOKEN": " "}) is None


def test_called_url_uses_the_public_url_or_the_host_twilio_sent():
    headers = {"host": "abc.tunnel.test", "x-forwarded-proto": "https"}
    assert called_url(None, "http", headers, "/twilio/voice") == "https://abc.tunnel.test/twilio/voice"
    assert called_url(None, "ws", headers, "/twilio/media-stream") == "wss://abc.tunnel.test/twilio/media-stream"
    assert called_url(None, "ws", {"host": "127.0.0.1:8000"}, "/twilio/media-stream", "x=1") == (
        "ws://127.0.0.1:8000/twilio/media-stream?x=1")
    assert called_url("https://pub.test/", "ws", {}, "/twilio/media-stream") == "wss://pub.test/twilio/media-stream"
    assert called_url("https://pub.test", "http", {}, "/twilio/voice") == "https://pub.test/twilio/voice"
