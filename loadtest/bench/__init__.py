"""`make bench`: quantserve measured against its peers and the hardware limit (see __main__)."""
