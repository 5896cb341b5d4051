"""Wire types, codecs, subjects and stream configurations shared by every chatfed package."""
