from retrysafe._records import Claimed, Existing, State, StoredResponse


def test_first_claim_then_replay(store):
    first = store.claim("id-1", "fp", 60)
    assert isinstance(first, Claimed)
    assert store.complete("id-1", first.token, StoredResponse(201, (), b"ok"), 3600, 600)
    again = store.claim("id-1", "fp", 60)
    assert isinstance(again, Existing)
    assert again.record.state is State.COMPLETED
    assert again.record.response == StoredResponse(201, (), b"ok")
