"""Evidence handling: approvals for footage access, BagIt exports and their offline verification,
spot-check ledgers and statistics reports (000 art. 16, 18; 001 art. 26, 28; 002 art. 16, 22;
004 art. 19, 20).
"""
